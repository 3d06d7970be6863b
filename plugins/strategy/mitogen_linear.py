"""The linear strategy run through Mitogen when the toolchain has it (ansible.cfg).

Mitogen keeps one Python per host for the whole play and runs each module in it,
where plain Ansible starts a fresh interpreter per task that compiles the module's
imports again. Without the `mitogen` package (an Ansible from elsewhere) this is
Ansible's own linear strategy: slower, same result.
"""

try:
    import ansible.collections.list
    import ansible_mitogen.affinity
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as _MitogenLinear

    # Mitogen pins its processes to CPUs; on fewer than 4 it puts the top-level process,
    # every worker and their ssh and rsync children on one CPU, which another busy
    # controller on the same machine then shares. The kernel's scheduler places them.
    ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

    # Mitogen lists the installed collections before each task of a collection's module,
    # in the worker forked for it: ~20 ms with the `ansible` package's 90 collections.
    # Listed once here, before the workers fork, every worker inherits the list.
    _list_collection_dirs = ansible.collections.list.list_collection_dirs
    _collection_dirs = []

    def _listed_collection_dirs(*args, **kwargs):
        if args or kwargs:
            return _list_collection_dirs(*args, **kwargs)
        if not _collection_dirs:
            _collection_dirs.extend(_list_collection_dirs())
        return iter(_collection_dirs)

    ansible.collections.list.list_collection_dirs = _listed_collection_dirs

    class StrategyModule(_MitogenLinear):
        def run(self, iterator, play_context):
            _listed_collection_dirs()
            return super().run(iterator, play_context)

except ImportError:
    from ansible.plugins.strategy.linear import StrategyModule
    from ansible.utils.display import Display

    Display().warning("mitogen is not installed: the linear strategy runs without it (make toolchain installs it)")

__all__ = ["StrategyModule"]
