"""The CNN architectures of training/models.py, built with Keras (TensorFlow backend), channels-last.

The same ``architecture`` / ``kernel_size`` / ``width`` / ``dropout`` hyperparameters give the same layer
shapes in both frameworks:

- ``compact``: BatchNorm CNN with global average pooling (16.4K parameters at width 24 on 28x28x1).
- ``keras``: conv(w)-pool-conv(2w)-pool-conv(2w), dense 64, dropout (the TensorFlow MNIST reference at w=32).
- ``dense``: Flatten -> Dense(8w) -> Dropout -> Dense(8w) -> Dense(classes), no convolution.

Every ReLU is its own named layer (``<block>_relu``), so the Debugger callback can read the ReLU inputs that
PoorWeightInitialization looks at. The models output logits; the exported serving signature adds the softmax.
"""

from __future__ import annotations

from typing import Any

ARCHITECTURES = ("compact", "keras", "dense")


def _padding(kernel_size: int) -> int:
    """Padding that makes every kernel size shrink the map by 2 pixels, as a valid 3x3 does (models.py)."""
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd number >= 3, got {kernel_size}")
    return (kernel_size - 3) // 2


def _conv(x: Any, filters: int, kernel: int, pad: int, name: str, *, batch_norm: bool, dropout: float = 0.0) -> Any:
    from keras import layers

    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, use_bias=not batch_norm, name=f"{name}_conv")(x)
    if batch_norm:
        # PyTorch's BatchNorm2d defaults: momentum 0.1 (Keras counts it the other way round) and eps 1e-5.
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def build_keras_model(architecture: str, num_classes: int, kernel_size: int = 3, width: int | None = None,
                      dropout: float | None = None, in_channels: int = 1, image_size: int = 28) -> Any:
    """A functional Keras model taking (N, H, W, C) normalized images and returning logits."""
    import keras
    from keras import layers

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    inputs = keras.Input((image_size, image_size, in_channels), name="images")
    k = kernel_size
    if architecture == "compact":
        width = 24 if width is None else width
        dropout = 0.05 if dropout is None else dropout
        pad, half = _padding(k), max(width // 2, 4)
        x = _conv(inputs, half, k, pad, "block1", batch_norm=True)
        x = _conv(x, width, k, pad, "block2", batch_norm=True)
        x = layers.MaxPooling2D(2, name="pool1")(x)
        x = _conv(x, half, 1, 0, "block3", batch_norm=True, dropout=dropout)
        x = _conv(x, width, k, pad, "block4", batch_norm=True, dropout=dropout)
        x = _conv(x, width, k, pad, "block5", batch_norm=True, dropout=dropout)
        x = _conv(x, width, k, k // 2, "block6", batch_norm=True, dropout=dropout)
        if x.shape[1] is not None and x.shape[1] < 1:
            raise ValueError(f"kernel_size={k} is too large for {image_size}x{image_size} images")
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    elif architecture == "keras":
        width = 32 if width is None else width
        dropout = 0.5 if dropout is None else dropout
        pad = _padding(k)
        x = _conv(inputs, width, k, pad, "block1", batch_norm=False)
        x = layers.MaxPooling2D(2, name="pool1")(x)
        x = _conv(x, 2 * width, k, pad, "block2", batch_norm=False)
        x = layers.MaxPooling2D(2, name="pool2")(x)
        x = _conv(x, 2 * width, k, pad, "block3", batch_norm=False)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(64, name="dense1")(x)
        x = layers.ReLU(name="dense1_relu")(x)
        x = layers.Dropout(dropout, name="dense1_dropout")(x)
    else:
        width = 8 * (24 if width is None else width)
        dropout = 0.2 if dropout is None else dropout
        x = layers.Flatten(name="flatten")(inputs)
        x = layers.Dense(width, name="dense1")(x)
        x = layers.ReLU(name="dense1_relu")(x)
        x = layers.Dropout(dropout, name="dense1_dropout")(x)
        x = layers.Dense(width, name="dense2")(x)
        x = layers.ReLU(name="dense2_relu")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"{architecture}_cnn")


def relu_layers(model: Any) -> list[Any]:
    from keras import layers

    return [layer for layer in model.layers if isinstance(layer, layers.ReLU)]
