"""Build `mnist_trainer_kernels` with torch's own compiler flags and headers."""

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

setup(
    packages=["mnist_trainer_kernels"],
    ext_modules=[
        CppExtension(
            "mnist_trainer_kernels._lenet",
            ["lenet_step.cpp"],
            # -O3 vectorises the loops for each instruction set target_clones names;
            # -fopenmp: the step's one parallel region, with the barrier its threads meet at.
            extra_compile_args=["-O3", "-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
