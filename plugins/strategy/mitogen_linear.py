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

    # Mitogen's multiplexer builds what it sends a host for each Python module the host
    # imports (minified, compressed, with the list of its imports): 170-odd modules and
    # 0.7-0.8 s of every run, most of it before the first task. Kept on disk between runs,
    # keyed by each module file's mtime and size (and its folder's, for a package), and
    # thrown away whole when Mitogen, Ansible, Python or a folder of sys.path differ.
    import os
    import pickle
    import sys
    import threading

    import ansible
    import mitogen
    import mitogen.master

    _build_tuple = mitogen.master.ModuleResponder._build_tuple
    _tuple_cache_path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                     ".cache", "mitogen-modules.pickle")
    # A package installed or removed changes its folder's mtime: a module found before may
    # now be shadowed by another on the path.
    _tuple_cache_version = repr((mitogen.__version__, ansible.__version__, sys.version,
                                 [(p, os.stat(p).st_mtime_ns if os.path.isdir(p) else None) for p in sys.path]))
    _tuple_cache = {"entries": None, "dirty": threading.Event()}

    def _module_stamp(tup):
        path, is_pkg = tup[2], tup[1] is not None
        if not path or not os.path.isabs(path):
            return None
        try:
            stat = os.stat(path)
            folder = os.stat(os.path.dirname(path)).st_mtime_ns if is_pkg else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, folder)

    def _save_tuple_cache():
        while True:
            _tuple_cache["dirty"].wait()
            _tuple_cache["dirty"].clear()
            try:
                os.makedirs(os.path.dirname(_tuple_cache_path), exist_ok=True)
                partial = f"{_tuple_cache_path}.{os.getpid()}"
                with open(partial, "wb") as out:
                    pickle.dump({"version": _tuple_cache_version, "entries": dict(_tuple_cache["entries"])}, out)
                os.replace(partial, _tuple_cache_path)
            except OSError:
                return  # no writable .cache: every run builds them, as Mitogen does

    def _load_tuple_cache():
        entries = {}
        try:
            with open(_tuple_cache_path, "rb") as source:
                saved = pickle.load(source)
            if saved.get("version") == _tuple_cache_version:
                entries = saved["entries"]
        except Exception:  # missing, partial or from another version: start afresh
            pass
        _tuple_cache["entries"] = entries
        threading.Thread(target=_save_tuple_cache, name="mitogen-module-cache", daemon=True).start()

    def _cached_build_tuple(self, fullname):
        if fullname in self._cache:
            return self._cache[fullname]
        if _tuple_cache["entries"] is None:
            _load_tuple_cache()
        saved = _tuple_cache["entries"].get(fullname)
        if saved is not None and saved[0] == _module_stamp(saved[1]):
            self.policy.denied_raise(fullname)
            self._cache[fullname] = saved[1]
            return saved[1]
        tup = _build_tuple(self, fullname)
        stamp = _module_stamp(tup)
        if stamp is not None:
            _tuple_cache["entries"][fullname] = (stamp, tup)
            _tuple_cache["dirty"].set()
        return tup

    mitogen.master.ModuleResponder._build_tuple = _cached_build_tuple

    class StrategyModule(_MitogenLinear):
        def run(self, iterator, play_context):
            _listed_collection_dirs()
            return super().run(iterator, play_context)

except ImportError:
    from ansible.plugins.strategy.linear import StrategyModule
    from ansible.utils.display import Display

    Display().warning("mitogen is not installed: the linear strategy runs without it (make toolchain installs it)")

__all__ = ["StrategyModule"]
