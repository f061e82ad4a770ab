import os

# MuJoCo picks its GL backend at import time: headless Mesa EGL unless the user chose one.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
