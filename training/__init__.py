"""Offline training scripts; each publishes its run as a repository version."""
