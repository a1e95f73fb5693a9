"""``ombrl benchmark SPEC``: a grid of offline runs from a small TOML or YAML spec.

* :mod:`~offline_mbrl.benchmark.spec`: parse, validate and expand a spec into its units;
* :mod:`~offline_mbrl.benchmark.units`: what one unit does (resolve a dataset, train its
  environment model, train a (dataset, mode) population) and when it is finished;
* :mod:`~offline_mbrl.benchmark.progress`: the progress line and its time estimate;
* :mod:`~offline_mbrl.benchmark.cost`: the measured throughput behind ``--plan``'s estimate;
* :mod:`~offline_mbrl.benchmark.report`: the results table and the seed's 3 × 5 figure;
* :mod:`~offline_mbrl.benchmark.runner`: the units as Ray tasks (the optional extra
  ``pip install 'offline_mbrl[tune]'``);
* :mod:`~offline_mbrl.benchmark.commands`: the command line.
"""
