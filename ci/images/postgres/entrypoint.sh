#!/bin/sh
# First start: create the cluster the way the official image does (superuser `postgres`,
# password or trust auth from the environment, listening on all addresses); then run the
# server in the foreground so its log goes to stderr.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        auth=scram-sha-256
        printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pwfile
        set -- --pwfile=/tmp/pwfile
    elif [ "${POSTGRES_HOST_AUTH_METHOD:-}" = trust ]; then
        auth=trust
        set --
    else
        echo "set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust (as for the official image)" >&2
        exit 1
    fi
    initdb --username=postgres --auth-local=trust --auth-host="$auth" "$@" >/dev/null
    rm -f /tmp/pwfile
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
fi
exec postgres
