"""Other frameworks trained by our collectives: Keras 3 on TensorFlow (``keras.py``).

JAX needs nothing here: its arrays go into the collectives as they are (lesson 20).
"""
