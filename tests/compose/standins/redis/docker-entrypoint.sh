#!/bin/sh
# As the upstream image's entrypoint: options alone mean redis-server; drop root to `redis`.
set -e
case "$1" in -* | *.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ]; then
    shift
    # Upstream builds redis with protected mode off, so a password-less server answers on the
    # container network; Debian's binary defaults to on, unless a config file decides.
    case "$1" in *.conf) ;; *) set -- --protected-mode no "$@" ;; esac
    set -- redis-server "$@"
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' +
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
