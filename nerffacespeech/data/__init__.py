"""The dataset layouts: raw input clips (`layout`), shard assignment (`sharding`), processed output (`processed`)."""
