"""Student and teacher on any timm classifier; pretrained weights from a file, timm, or none."""
from models.sbka import (SBKAStudent, SBKATeacher, build_student, build_teacher, check_model_name,  # noqa: F401
                         load_pretrained_file, load_student_checkpoint, student_from_checkpoint)
