"""The sections of the report page, one module each.

- :mod:`~htmlreport.sections.overview`: the headline numbers of every set side by side
  and the four leave-one-out errors of every set as grouped bars;
- :mod:`~htmlreport.sections.comparison`: for several sets, line charts over the sets
  in the order given;
- :mod:`~htmlreport.sections.set_detail`: one set's cards, NNK degree histogram,
  per-class charts, suspects table and per-class numbers;
- :mod:`~htmlreport.sections.map_figure`: a set's 2-D map figure, and which map it draws;
- :mod:`~htmlreport.sections.compare`: a compare job's point-by-point overlaps, a drift
  job's scores and verdict, and the overlap of consecutive sets of the same points;
- :mod:`~htmlreport.sections.guide`: how to read the report.

:mod:`~htmlreport.sections.vocabulary` holds what several sections share: how the page
names and colours the leave-one-out errors and the regimes.
"""
