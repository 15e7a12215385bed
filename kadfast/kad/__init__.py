"""The Kademlia DHT protocol (``/ipfs/kad/1.0.0``): wire codec, record
validation, and the parts built on them."""
