"""The vectorised in-graph assignment agrees with a per-object loop on random scenes."""

import numpy as np
import pytest
from keras import ops

from solo_tf.targets import assign_grids
from targets_reference import loop_assign, random_objects

SOLOV2 = dict(num_grids=(40, 36, 24, 16, 12),
              scale_ranges=((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)))
LIGHT = dict(num_grids=(40, 36, 24, 16, 12),
             scale_ranges=((1, 56), (28, 112), (56, 224), (112, 448), (224, 896)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("heads,image_size", [(SOLOV2, (800, 1344)), (LIGHT, (448, 768)), (SOLOV2, (128, 96))])
def test_in_graph_assignment_matches_the_per_object_loop(seed, heads, image_size):
    rng = np.random.RandomState(seed)
    classes, boxes, centers, valid = random_objects(rng, batch=3, slots=12, image_size=image_size)
    pos_scale = [0.2, 0.5, 1.0][seed % 3]
    expected = loop_assign(classes, boxes, centers, valid, image_size, pos_scale=pos_scale, **heads)
    got = assign_grids(classes, boxes, centers, valid, image_size, pos_scale=pos_scale, **heads)
    positives = 0
    for level, ((cat_e, own_e), (cat_g, own_g)) in enumerate(zip(expected, got)):
        np.testing.assert_array_equal(ops.convert_to_numpy(own_g), own_e, err_msg=f"owner, level {level}")
        np.testing.assert_array_equal(ops.convert_to_numpy(cat_g), cat_e, err_msg=f"category, level {level}")
        positives += int((own_e >= 0).sum())
    assert positives > 0
