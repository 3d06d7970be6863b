"""The linear strategy run through Mitogen when the toolchain has it (ansible.cfg).

Mitogen keeps one Python per host for the whole play and runs each module in it,
where plain Ansible starts a fresh interpreter per task that compiles the module's
imports again. Without the `mitogen` package (an Ansible from elsewhere) this is
Ansible's own linear strategy: slower, same result.
"""

try:
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule
except ImportError:
    from ansible.plugins.strategy.linear import StrategyModule
    from ansible.utils.display import Display

    Display().warning("mitogen is not installed: the linear strategy runs without it (make toolchain installs it)")

__all__ = ["StrategyModule"]
