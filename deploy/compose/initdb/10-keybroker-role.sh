#!/bin/sh
# keybroker's database role, made once: the official postgres image runs
# the scripts in /docker-entrypoint-initdb.d (compose.yaml mounts this
# directory there) on the first start of an empty data volume, as the
# bootstrap superuser $POSTGRES_USER, against a server on the local socket.
#
# It creates a plain LOGIN role — not a superuser, no BYPASSRLS, no
# CREATEDB, CREATEROLE or REPLICATION — and a database that role owns.
# keybroker connects only as that role, so the row-level security forced
# on its tables binds every query it makes (keybroker refuses to start as
# a superuser). The bootstrap superuser stays inside this container, for
# backups and upgrades (deploy/README.md).
#
# Reads, from compose.yaml:
#   KEYBROKER_DB_USER           the role's name
#   KEYBROKER_DB_NAME           the database's name
#   KEYBROKER_DB_PASSWORD_FILE  a file holding the role's password (a Docker
#                               secret; the password never is an environment
#                               variable or a command-line argument)
#
# The image may source this file rather than run it: it sets no shell
# options and ends without `exit` unless it fails.

: "${KEYBROKER_DB_USER:?is not set (see deploy/compose/compose.yaml)}"
: "${KEYBROKER_DB_NAME:?is not set (see deploy/compose/compose.yaml)}"
: "${KEYBROKER_DB_PASSWORD_FILE:?is not set (see deploy/compose/compose.yaml)}"
if [ ! -s "$KEYBROKER_DB_PASSWORD_FILE" ]; then
	echo "keybroker initdb: the password file $KEYBROKER_DB_PASSWORD_FILE is missing or empty (see deploy/README.md)" >&2
	exit 1
fi

# psql reads the password itself (\set with backquotes), so that it shows
# in no process list; :'password' and :"role" quote what they insert.
psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" --dbname postgres \
	--set role="$KEYBROKER_DB_USER" --set db="$KEYBROKER_DB_NAME" <<'EOSQL' || exit 1
\set password `cat "$KEYBROKER_DB_PASSWORD_FILE"`
CREATE ROLE :"role" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'password';
\unset password
CREATE DATABASE :"db" OWNER :"role";
EOSQL
echo "keybroker initdb: created the role $KEYBROKER_DB_USER and its database $KEYBROKER_DB_NAME"
