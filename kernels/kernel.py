"""Entry point of the imaging kernel: ``python -m imaginghub.kernels.kernel -f CONN``."""

from ipykernel.kernelapp import IPKernelApp

PRELOAD = "from imaginghub.kernels.preload import *  # noqa"


def main() -> None:
    IPKernelApp.launch_instance(exec_lines=[PRELOAD])


if __name__ == "__main__":
    main()
