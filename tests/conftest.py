"""Suite-wide settings.

Most tests run tiny networks (many small convolutions): intra-op threads only contend for the
two cores there, so torch runs single-threaded in the test process.
"""

import torch

torch.set_num_threads(1)
