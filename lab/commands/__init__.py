"""The commands behind the `lab` console script: they import the science, nothing imports them."""
