#!/bin/sh
# Writes this Redis pod's redis.conf and sentinel.conf into $CONF_DIR.
# The primary is the one the sentinels name now: after a failover that is no longer
# redis-0, and a restarted old primary must come back as a replica, not as a second
# primary. Only when no sentinel answers (the first start) is it redis-0.
set -eu
: "${POD_NAME:?}" "${SERVICE:?}" "${MASTER_NAME:?}" "${CONF_DIR:?}"
REPLICAS=${REPLICAS:-3}
me="$POD_NAME.$SERVICE"
set_name=${POD_NAME%-*}

master=""
i=0
while [ "$i" -lt "$REPLICAS" ] && [ -z "$master" ]; do
    peer="$set_name-$i.$SERVICE"
    master=$(timeout 3 redis-cli -h "$peer" -p 26379 --raw \
        sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || master=""
    case "$master" in *" "*) master="" ;; esac  # an error reply, not a name
    i=$((i + 1))
done
master=${master:-$set_name-0.$SERVICE}
echo "primary: $master"

{
    echo "port 6379"
    # Reached over the pod network (who may connect: networkpolicy.yaml).
    echo "protected-mode no"
    # Sentinel and the replicas know each pod by its stable name, not its changing IP.
    echo "replica-announce-ip $me"
    # A primary cut off from both replicas stops taking writes after 10 s rather than
    # take edits that a failover on the other side would drop.
    echo "min-replicas-to-write 1"
    echo "min-replicas-max-lag 10"
    if [ "$master" != "$me" ]; then
        echo "replicaof $master 6379"
    fi
} > "$CONF_DIR/redis.conf"

{
    echo "port 26379"
    echo "protected-mode no"
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $me"
    echo "sentinel monitor $MASTER_NAME $master 6379 2"
    echo "sentinel down-after-milliseconds $MASTER_NAME 5000"
    echo "sentinel failover-timeout $MASTER_NAME 60000"
    echo "sentinel parallel-syncs $MASTER_NAME 1"
} > "$CONF_DIR/sentinel.conf"
