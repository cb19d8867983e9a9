"""Report libraries: the tables and their statistics, figure data and charts, the page's sections, figure targets."""
