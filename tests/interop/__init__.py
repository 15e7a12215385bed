"""Interop tests: kadfast's wire protocol against rust, go, js and py libp2p peers."""
