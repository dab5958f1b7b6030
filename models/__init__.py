"""Student and teacher on any timm classifier; pretrained weights from a file, timm, or none."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)

from models.sbka import (SBKAStudent, SBKATeacher, build_student, build_teacher, check_model_name,  # noqa: E402, F401
                         load_pretrained_file, load_student_checkpoint, student_from_checkpoint)
