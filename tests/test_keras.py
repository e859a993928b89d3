"""Keras 3 (TensorFlow backend) trained data-parallel by our collectives (parallel_lm/frameworks/keras.py)."""
from conftest import PROGRAMS, assert_cases, mpirun


def test_tensorflow_tensors_and_keras_training_on_3_ranks_equal_one_process(tmp_path):
    """TF tensors bitwise as NumPy; sparse gradients gathered exactly; a custom loop and model.fit equal one
    process (tests/programs/check_keras.py). KERAS_HOME keeps Keras out of the home folder."""
    proc = mpirun(3, [str(PROGRAMS / "check_keras.py")], timeout=180, env={"KERAS_HOME": str(tmp_path)})
    assert_cases(proc, ["tensorflow", "sparse-uneven", "bad-rows", "custom-loop", "fit"])
