"""The linear strategy run through Mitogen when the toolchain has it (ansible.cfg).

Mitogen keeps one Python per host for the whole play and runs each module in it,
where plain Ansible starts a fresh interpreter per task that compiles the module's
imports again. Without the `mitogen` package (an Ansible from elsewhere) this is
Ansible's own linear strategy: slower, same result.
"""

try:
    import ansible_mitogen.affinity
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

    # Mitogen pins its processes to CPUs; on fewer than 4 it puts the top-level process,
    # every worker and their ssh and rsync children on one CPU, which another busy
    # controller on the same machine then shares. The kernel's scheduler places them.
    ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()
except ImportError:
    from ansible.plugins.strategy.linear import StrategyModule
    from ansible.utils.display import Display

    Display().warning("mitogen is not installed: the linear strategy runs without it (make toolchain installs it)")

__all__ = ["StrategyModule"]
