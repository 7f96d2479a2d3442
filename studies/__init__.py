"""Studies: the paper's tables and figures as data — named lists of trainer runs plus how to tabulate them.

``python -m studies run|report|estimate <study>`` from a checkout, ``warpgrad-study ...`` once installed
(the package installs as ``warpgrad_tf_apps.studies``). See docs/studies.md.
"""

__all__ = []
