"""The parts of `python -m benchmarks.gpu_suite` (one module each) and the scripts that carry the project's
pure-Python stack to a GPU machine without a package registry (download_wheels.sh, run_on_gpu.sh,
check_wheels.py)."""
