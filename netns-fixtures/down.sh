#!/bin/bash
# Deletes every namespace created by up.sh with the given prefix (default ngdev).
P=${1:-ngdev}
for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do
  ip netns delete "$ns"
done
rm -f "/tmp/$P-inventory.toml"
