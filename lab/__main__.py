"""`python -m lab ...` is the `lab` command (lab.commands.cli), e.g. under torchrun: `-m lab train ...`."""
import sys

from lab.commands.cli import main

sys.exit(main())
