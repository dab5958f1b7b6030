"""Student and teacher built on timm's ConvNeXtV2, and the official-checkpoint mapping."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)

from models.sbka import (SBKAStudent, SBKATeacher, build_student, build_teacher,  # noqa: E402, F401
                         load_official_checkpoint, load_student_checkpoint, student_from_checkpoint)
