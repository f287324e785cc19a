"""lsdm_fast: Latent Space Distribution Matching for semi-supervised conditional generation."""
__version__ = "0.1.0"

from .api import LSDM  # noqa: E402
from .config import AutoencoderConfig, LSDMConfig, MatchingConfig  # noqa: E402

__all__ = ["LSDM", "LSDMConfig", "AutoencoderConfig", "MatchingConfig", "__version__"]
