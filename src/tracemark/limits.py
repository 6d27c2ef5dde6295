"""Hard limits on sizes read from input: beyond them an input is garbage or an attack.

One place, so a parser that builds a list per class or allocates a network per width
never does so for a number nobody can mean (a label of 10^9 once built 10^9 class
names and exhausted memory).
"""

MAX_CLASSES = 100_000  # ImageNet-21k has 21,841 classes
MAX_IMAGE_SIDE = 8192  # pixels per side of an image a model is fed (--size)
MAX_MODEL_WIDTH = 1024  # channels of a tracemark checkpoint's first layer
