"""The reference's variable-length Matrix NMS interface over :func:`solo_tf.matrix_nms.matrix_nms`,
for the golden cases (test_golden.py, test_matrix_nms.py): test support, not library API."""

import numpy as np
from keras import ops

from solo_tf.matrix_nms import matrix_nms


def matrix_nms_numpy_case(masks, labels, scores, *, filter_thr=-1.0, nms_pre=-1, max_num=-1,
                          kernel="gaussian", sigma=2.0):
    """The reference's variable-length interface: fixed-size outputs cut to the filled slots.

    Args:
        masks: (n, h, w) binary; labels, scores: (n,). ``max_num <= 0`` keeps all.

    Returns:
        numpy ``scores`` (m,) float32 descending, ``labels`` (m,) int32, ``keep_inds`` (m,)
        int32 indices into the input.
    """
    masks = np.asarray(masks)
    n = masks.shape[0]
    slots = int(max_num) if max_num and max_num > 0 else max(n, 1)
    out = matrix_nms(masks.reshape(n, int(np.prod(masks.shape[1:]))).astype(np.float32), np.asarray(labels, np.int32),
                     np.asarray(scores, np.float32), kernel=kernel, sigma=sigma, filter_thr=filter_thr,
                     max_num=slots, nms_pre=nms_pre)
    m = int(ops.convert_to_numpy(out["num"]))
    return (
        ops.convert_to_numpy(out["scores"])[:m],
        ops.convert_to_numpy(out["labels"])[:m],
        ops.convert_to_numpy(out["keep_inds"])[:m],
    )
