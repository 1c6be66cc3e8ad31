# willow/compiler/lowering/base.py
class NotLowerable(Exception): """Why an object/option cannot be compiled."""
class CompiledOperator:           # returned by a lowering
    name: str                     # e.g. "LGBMClassifier.predict_proba"
    source: str                   # generated kernel module source (astor-rendered) shown by explain()
    def __call__(self, *inputs): ...   # same result as the original method
