"""Model families, one per file; importing this package registers every variant."""
from dlforge.models import asr, cnn, mlp, rnn, transformer, unet  # noqa: F401
