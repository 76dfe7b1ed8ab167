"""flair-riva: RIVA (Sun et al., COLING 2020), the pretrained tweet multimodal model, as a Flair embedding.

Importing the package registers :class:`RivaEmbeddings` with Flair, so a tagger saved with it loads
with a plain ``SequenceTagger.load(path)``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from flair_riva.config import FORMAT_VERSION, RivaConfig  # noqa: E402
from flair_riva.embeddings import RivaEmbeddings  # noqa: E402  (importing it registers it with Flair)
from flair_riva.model import CheckpointError, RivaModel, RivaOutput  # noqa: E402

__all__ = [
    "FORMAT_VERSION", "CheckpointError", "RivaConfig", "RivaEmbeddings", "RivaModel", "RivaOutput", "__version__",
]
