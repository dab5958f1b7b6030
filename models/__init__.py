"""Student and teacher built on timm's ConvNeXtV2, and the official-checkpoint mapping."""
from models.sbka import (SBKAStudent, SBKATeacher, build_student, build_teacher,  # noqa: F401
                         load_official_checkpoint, load_student_checkpoint, student_from_checkpoint)
