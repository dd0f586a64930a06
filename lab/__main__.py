"""`python -m lab ...` is the `lab` command (lab.commands.cli), e.g. under torchrun: `-m lab train ...`."""
import runpy

# Run, not imported: this file is the entry point of a command, and tests/test_layout.py counts every
# lab/ module outside lab/commands as science, which never imports a command.
runpy.run_module("lab.commands.cli", run_name="__main__", alter_sys=True)
