"""Dataset builders: each returns numpy images and integer labels, or a tf.data source."""
