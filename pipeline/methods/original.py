"""original: the input model, unchanged; the reference row of every table."""

from pipeline.methods.base import MethodReport, UnlearningMethod


class Original(UnlearningMethod):
    name = "original"
    summary = "the input model, unchanged (reference row)"
    defaults = {"epochs": 0}

    def unlearn(self, model, original, data, device, on_epoch_end=None, resume=None):
        return MethodReport()
