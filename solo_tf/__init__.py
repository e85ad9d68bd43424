"""solo-tf: SOLO, Decoupled SOLO and SOLOv2 instance segmentation for Keras 3.

Graph code (model, heads, targets, losses, decoder) uses ``keras.ops`` only and imports
without TensorFlow; the data pipeline, export and CLI need TensorFlow.
"""

from solo_tf.config import Config, ConfigError, load_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "__version__"]
