"""dlforge: implement, train, evaluate and sample from every family of deep-learning model.

    import dlforge
    run = dlforge.train("gpt-tiny", data="some text ...", max_steps=100)
    lm = dlforge.load(run.path)
    print(lm.generate("ROMEO:", max_new_tokens=100))
"""
__version__ = "0.2.0"

# The training package (dlforge/train/) is imported first, so that the name dlforge.train is then the
# function below and stays so: a later `import dlforge.train.x` finds the package in sys.modules and does
# not rebind the attribute.
import dlforge.train  # noqa: E402,F401  (the package)
from dlforge.api import load, train  # noqa: E402
from dlforge.errors import DlforgeError  # noqa: E402

__all__ = ["train", "load", "DlforgeError", "__version__"]
