"""The experiment grid: every row of Doersch & Zisserman 2017's tables, run, evaluated and tabulated.

`runner` pre-trains and evaluates the cells of a grid file (configs/grid/*.yaml) and
writes the tables; `figures` draws Figure 3 (performance vs compute) and Figure 4
(the lasso |alpha| matrix); `paper` holds the paper's numbers.
"""
