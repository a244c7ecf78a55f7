"""Launching bigseer jobs on clusters through the engines the field runs (SLURM via submitit)."""
