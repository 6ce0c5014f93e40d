"""ipywidgets front ends over toolkit's functions (needs ``pip install 'toolkit[notebook]'``).

``import toolkit`` never imports ipywidgets; ``import toolkit.widgets`` does. Each class has a
``.widget`` (the ipywidgets container) and displays itself in Jupyter. Every callback is a plain
method (``refresh``, ``update``, ``load``, ``generate``, ``run``, ``save``) that tests and notebooks
can call; long work runs in a thread, and ``wait()`` joins it.
"""

from toolkit.widgets.bench_runner import BenchRunner
from toolkit.widgets.compare_runner import CompareRunner
from toolkit.widgets.hardware import HardwarePanel
from toolkit.widgets.plan_explorer import PlanExplorer
from toolkit.widgets.playground import Playground

__all__ = ["BenchRunner", "CompareRunner", "HardwarePanel", "PlanExplorer", "Playground"]
