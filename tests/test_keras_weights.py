"""Weight import from Keras applications (TF-slim's BatchNorm without gamma): exact outputs against Keras itself,
parameter counts against Keras's, clear errors, the weights-file and CLI paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import relative_error

from inception_jax import models, weights
from inception_jax.weights import keras_applications

pytestmark = [pytest.mark.parity, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
APPLICATIONS = {"inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}


def random_keras_model(keras, name, include_top, size):
    """The Keras application with well-conditioned random weights: He-scaled kernels, random biases, and random
    BatchNorm beta and moving statistics (a fresh BN layer is an identity, which would not test their mapping)."""
    application = getattr(keras.applications, APPLICATIONS[name])
    model = application(weights=None, include_top=include_top, input_shape=(size, size, 3),
                        classifier_activation=None)  # fmt: skip
    rng = np.random.default_rng(0)
    uniform = lambda low, high, variable: variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            uniform(-0.2, 0.2, layer.beta)
            uniform(-0.5, 0.5, layer.moving_mean)
            uniform(0.5, 2.0, layer.moving_variance)
        elif kind in ("Conv2D", "Dense"):
            fan_in = int(np.prod(layer.kernel.shape[:-1]))
            layer.kernel.assign((rng.standard_normal(layer.kernel.shape) * np.sqrt(2 / fan_in)).astype(np.float32))
            if layer.use_bias:
                uniform(-0.1, 0.1, layer.bias)
    return model


def check_parity(keras, name, include_top, size):
    keras_model = random_keras_model(keras, name, include_top, size)
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    reference = np.asarray(keras_model(x, training=False))
    model, variables = weights.from_keras(keras_model)
    assert model.include_top == include_top and model.bn_scale is False
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))
    assert ours.shape == reference.shape
    error = relative_error(ours, reference)
    print(f"{name} include_top={include_top} {size}x{size} (Keras on {keras.backend.backend()}): "
          f"max |ours - Keras| / max |Keras| = {error:.2e}")  # fmt: skip
    assert error < 1e-4
    # Keras counts BatchNorm's moving statistics among its weights; ours keeps them apart from the parameters.
    trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    assert models.count_params(variables["params"]) == trainable
    assert models.count_params(variables) == keras_model.count_params()


# The published counts of the Keras applications (keras.io/api/applications), with the top.
@pytest.mark.parametrize("name,count", [("inception_v3", 23_851_784), ("inception_resnet_v2", 55_873_736)])
def test_counts_match_keras_published_figures(keras_module, name, count):
    keras_model = random_keras_model(keras_module, name, True, 299)
    _, variables = weights.from_keras(keras_model)
    assert keras_model.count_params() == count
    assert models.count_params(variables) == count


@pytest.mark.parametrize("include_top", [True, False], ids=["top", "features"])
@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_eval_outputs_match_keras_at_an_odd_size(keras_module, name, include_top):
    check_parity(keras_module, name, include_top, 107)


@pytest.mark.slow
@pytest.mark.parametrize("include_top", [True, False], ids=["top", "features"])
@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_eval_outputs_match_keras_at_299(keras_module, name, include_top):
    check_parity(keras_module, name, include_top, 299)


def test_residual_scales_are_read_from_keras(keras_module):
    """A Keras graph with other residual scales builds ours with them (its own scale layers are the truth)."""
    keras_model = random_keras_model(keras_module, "inception_resnet_v2", False, 75)
    for layer in keras_model.layers:
        if type(layer).__name__ == "CustomScaleLayer" and layer.scale != 1.0:
            layer.scale = {0.17: 0.3, 0.1: 0.25, 0.2: 0.15}[round(layer.scale, 2)]
    model, _ = weights.from_keras(keras_model)
    assert model.residual_scales == (0.3, 0.25, 0.15)
    assert model.num_blocks == (10, 20, 10)


def test_a_graph_that_differs_lists_every_problem(keras_module):
    keras_model = random_keras_model(keras_module, "inception_v3", False, 75)
    with pytest.raises(weights.WeightImportError) as error:  # every conv of ours half as wide as Keras's
        weights.from_keras(keras_model, depth_multiplier=0.5)
    message = str(error.value)
    assert message.count("expected (as ours") >= 94  # each of the 94 conv units, not only the first
    assert "Mixed_7c/branch3_0" in message and "Stem/Conv2d_1a_3x3" in message
    with pytest.raises(weights.WeightImportError, match="ours params/Logits/kernel: no Keras weight for it"):
        weights.from_keras(keras_model, include_top=True)
    with pytest.raises(ValueError, match="no Keras importer for 'inception_v4'"):
        weights.from_keras(keras_model, name="inception_v4")
    keras_model.name = "my_inception"
    with pytest.raises(ValueError, match="not one of"):
        weights.from_keras(keras_model)


def test_weights_file_and_cli_round_trip(keras_module, tmp_path):
    """save_weights -> our CLI -> weights.load gives Keras's outputs; a second conversion into the same directory
    is refused."""
    keras_model = random_keras_model(keras_module, "inception_v3", True, 75)
    path = tmp_path / "inception_v3.weights.h5"
    keras_model.save_weights(path)
    from inception_jax.weights.__main__ import main

    assert main(["--keras", "inception_v3", "--weights", str(path), "--out", str(tmp_path / "ours")]) == 0
    model, variables = weights.load(tmp_path / "ours")
    x = np.random.default_rng(2).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    reference = np.asarray(keras_model(x, training=False))
    ours = model.apply(variables, jnp.asarray(x), train=False)
    assert relative_error(ours, reference) < 1e-4
    with pytest.raises(SystemExit):
        main(["--keras", "inception_v3", "--weights", str(path), "--out", str(tmp_path / "ours")])
    assert keras_applications.load_keras_model("inception_v3", path).count_params() == keras_model.count_params()
