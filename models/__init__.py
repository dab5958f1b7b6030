"""Student and teacher on any timm classifier; pretrained weights from a file, timm, or none."""
from utils.runtime import lazy_exports, prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)

__all__ = ["SBKAStudent", "SBKATeacher", "build_student", "build_teacher", "check_model_name", "load_pretrained_file",
           "load_student_checkpoint", "student_from_checkpoint"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "models.sbka"))   # torch loads on first use
