#!/usr/bin/python
"""Bring a local PostgreSQL cluster's settings, login roles, databases and grants to the
wanted state in one call: one connection and a few catalog queries where one task per
object (community.postgresql) costs a module call each on every run."""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dagster_postgresql_objects
short_description: Settings, login roles, databases and grants of a local PostgreSQL cluster
description:
  - Connects over the local socket as the user it runs as (become postgres).
  - I(settings) are written with C(ALTER SYSTEM) when the server's configuration files
    (or, without any, its built-in default) give another value, then the configuration
    is reloaded. I(restart_pending) in the result says whether the server runs with
    another value of a setting only a restart applies (written by this run, or by an
    earlier one that ended before restarting).
  - I(roles) are created with LOGIN, or get their password set again when its SCRAM
    verifier does not match (or is not SCRAM). Passwords are never returned.
  - I(databases) are created (UTF-8, from template0) or given their owner.
  - I(privileges) are granted in one transaction per database; changed when the ACLs of
    that database differ afterwards. Nothing is revoked.
  - Check mode reports what would change and changes nothing.
options:
  settings:
    description: Server settings, name to value, as C(ALTER SYSTEM SET) takes them.
    type: dict
    default: {}
  roles:
    description: Login roles, each C(name) and C(password) (kept out of the logs).
    type: list
    elements: dict
    default: []
  databases:
    description: Databases, each C(name) and C(owner).
    type: list
    elements: dict
    default: []
  privileges:
    description:
      - Grants, each C(database), C(role), C(privs) (comma-separated), C(on) (C(database),
        C(schema), C(tables) or C(sequences)) and, for the last three, C(schema) (public).
      - With C(default_for) (a role), the grant applies to the C(tables) or C(sequences)
        that role makes later (ALTER DEFAULT PRIVILEGES); without, to those there now.
    type: list
    elements: dict
    default: []
notes:
  - Passwords compare equal when the stored verifier matches the password as given or in
    NFKC form (what SASLprep does to most non-ASCII passwords).
"""

RETURN = r"""
changes:
  description: What changed (or would change, in check mode), one line each.
  type: list
  returned: always
restart_pending:
  description: A setting given here waits for a restart of the cluster.
  type: bool
  returned: always
"""

PRIVS_ON = {"database", "schema", "tables", "sequences"}


def scram_matches(verifier: str | None, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (SCRAM-SHA-256$iter:salt$StoredKey:ServerKey) is
    the one of this password (RFC 5802: the keys from PBKDF2 of the password)."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        head, keys = verifier[len("SCRAM-SHA-256$"):].split("$")
        iterations, salt = head.split(":")
        stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
        salt = base64.b64decode(salt)
        iterations = int(iterations)
    except ValueError:
        return False
    for candidate in dict.fromkeys([password, unicodedata.normalize("NFKC", password)]):
        salted = hashlib.pbkdf2_hmac("sha256", candidate.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        if (hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
                and hmac.compare_digest(hmac.new(salted, b"Server Key", "sha256").digest(), server_key)):
            return True
    return False


class Cluster:
    def __init__(self, module: AnsibleModule):
        import psycopg2
        from psycopg2 import sql

        self.module = module
        self.psycopg2, self.sql = psycopg2, sql
        self.check = module.check_mode
        self.changes: list[str] = []
        self.connections: dict[str, object] = {}

    def connect(self, database: str):
        if database not in self.connections:
            connection = self.psycopg2.connect(dbname=database)
            connection.autocommit = True
            self.connections[database] = connection
        return self.connections[database]

    def query(self, statement, args=(), database="postgres"):
        with self.connect(database).cursor() as cursor:
            cursor.execute(statement, args)
            return cursor.fetchall() if cursor.description else []

    def change(self, what: str, statement, args=(), database="postgres") -> None:
        self.changes.append(what)
        if not self.check:
            self.query(statement, args, database)

    def settings(self, wanted: dict) -> bool:
        names = sorted(wanted)
        if not names:
            return False
        # What the server will run with: the last line setting it in its files (the
        # postgresql.auto.conf ALTER SYSTEM writes comes last), else the built-in default.
        in_files = dict(self.query(
            "SELECT name, setting FROM pg_file_settings WHERE name = ANY(%s) AND setting IS NOT NULL ORDER BY seqno", (names,)))
        known = {name: (context, default, running) for name, context, default, running in self.query(
            "SELECT name, context, boot_val, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", (names,))}
        restart = set()
        altered = False
        for name in names:
            if name not in known:
                self.module.fail_json(msg=f"PostgreSQL has no setting named {name}")
            value = str(wanted[name])
            context, default, running = known[name]
            # Also when an earlier run wrote it and ended before the restart.
            if context == "postmaster" and running != value:
                restart.add(name)
            if in_files.get(name, default) == value:
                continue
            self.change(f"setting {name} = '{value}'",
                        self.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                            self.sql.Identifier(name), self.sql.Literal(value)))
            altered = True
        if altered and not self.check:
            self.query("SELECT pg_reload_conf()")
        if restart:
            self.changes.append(f"restart for {', '.join(sorted(restart))}")
        return bool(restart)

    def roles(self, wanted: list) -> None:
        if not wanted:
            return
        passwords = {}
        for role in wanted:
            if passwords.setdefault(role["name"], role["password"]) != role["password"]:
                self.module.fail_json(msg=f"role {role['name']} is given two different passwords: "
                                          "give each login of the platform a name of its own")
        wanted = [{"name": name, "password": password} for name, password in passwords.items()]
        stored = dict(self.query("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                                 ([r["name"] for r in wanted],)))
        can_login = {name for (name,) in self.query(
            "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname = ANY(%s)", ([r["name"] for r in wanted],))}
        if not self.check:
            # The server hashes the passwords below: SCRAM whatever the cluster's default.
            self.query("SET password_encryption = 'scram-sha-256'")
        for role in wanted:
            name, password = role["name"], role["password"]
            ident = self.sql.Identifier(name)
            if name not in stored:
                self.change(f"role {name} created",
                            self.sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(ident), (password,))
                continue
            if name not in can_login:
                self.change(f"role {name} may log in", self.sql.SQL("ALTER ROLE {} LOGIN").format(ident))
            if not scram_matches(stored[name], password):
                self.change(f"role {name} password set",
                            self.sql.SQL("ALTER ROLE {} PASSWORD %s").format(ident), (password,))

    def databases(self, wanted: list) -> None:
        if not wanted:
            return
        owners = dict(self.query("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
                                 ([d["name"] for d in wanted],)))
        for database in wanted:
            name, owner = self.sql.Identifier(database["name"]), self.sql.Identifier(database["owner"])
            if database["name"] not in owners:
                self.change(f"database {database['name']} created",
                            self.sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0")
                            .format(name, owner))
            elif owners[database["name"]] != database["owner"]:
                self.change(f"database {database['name']} owned by {database['owner']}",
                            self.sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, owner))

    def acls(self, connection) -> dict:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 'database', datname::text, datacl::text FROM pg_database WHERE datname = current_database()"
                " UNION ALL SELECT 'schema', nspname::text, nspacl::text FROM pg_namespace"
                " UNION ALL SELECT 'relation', oid::text, relacl::text FROM pg_class"
                " WHERE relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
                " UNION ALL SELECT 'default', concat_ws(' ', defaclrole, defaclnamespace, defaclobjtype), defaclacl::text"
                " FROM pg_default_acl")
            return {(kind, name): acl for kind, name, acl in cursor.fetchall()}

    def grant(self, item: dict):
        sql = self.sql
        privs = sql.SQL(", ").join(sql.SQL(p.strip().upper()) for p in item["privs"].split(","))
        role = sql.Identifier(item["role"])
        on = item["on"]
        if on == "database":
            return sql.SQL("GRANT {} ON DATABASE {} TO {}").format(privs, sql.Identifier(item["database"]), role)
        schema = sql.Identifier(item["schema"])
        if on == "schema":
            return sql.SQL("GRANT {} ON SCHEMA {} TO {}").format(privs, schema, role)
        kind = sql.SQL(on.upper())
        if item.get("default_for"):
            return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}").format(
                sql.Identifier(item["default_for"]), schema, privs, kind, role)
        return sql.SQL("GRANT {} ON ALL {} IN SCHEMA {} TO {}").format(privs, kind, schema, role)

    def privileges(self, wanted: list) -> None:
        for item in wanted:
            for part in item["privs"].split(","):
                if not part.strip().replace(" ", "").isalpha():
                    self.module.fail_json(msg=f"privileges: {part!r} is not a privilege")
        by_database: dict[str, list] = {}
        for item in wanted:
            by_database.setdefault(item["database"], []).append(item)
        for database, items in by_database.items():
            missing = {f"role {name} created" for i in items for name in (i["role"], i["default_for"]) if name}
            if self.check and (f"database {database} created" in self.changes or missing & set(self.changes)):
                self.changes.append(f"privileges granted in {database}")
                continue  # what they would be on is not there yet
            connection = self.connect(database)
            connection.autocommit = False
            try:
                before = self.acls(connection)
                with connection.cursor() as cursor:
                    for item in items:
                        cursor.execute(self.grant(item))
                after = self.acls(connection)
                # Objects other sessions (runs) made or dropped meanwhile do not count; a
                # default-privileges entry made here does.
                if any(acl != before.get(key) for key, acl in after.items()
                       if key in before or key[0] == "default"):
                    self.changes.append(f"privileges granted in {database}")
                    if not self.check:
                        connection.commit()
            finally:
                connection.rollback()  # what check mode tried, or what an error left
                connection.autocommit = True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "settings": {"type": "dict", "default": {}},
            "roles": {"type": "list", "elements": "dict", "default": [], "options": {
                "name": {"type": "str", "required": True},
                "password": {"type": "str", "required": True, "no_log": True}}},
            "databases": {"type": "list", "elements": "dict", "default": [], "options": {
                "name": {"type": "str", "required": True},
                "owner": {"type": "str", "required": True}}},
            "privileges": {"type": "list", "elements": "dict", "default": [], "options": {
                "database": {"type": "str", "required": True},
                "role": {"type": "str", "required": True},
                "privs": {"type": "str", "required": True},
                "on": {"type": "str", "required": True, "choices": sorted(PRIVS_ON)},
                "schema": {"type": "str", "default": "public"},
                "default_for": {"type": "str"}}},
        },
        supports_check_mode=True,
    )
    try:
        cluster = Cluster(module)
    except ImportError:
        module.fail_json(msg="psycopg2 is missing on the database host (Debian package python3-psycopg2)")
    try:
        restart = cluster.settings(module.params["settings"])
        cluster.roles(module.params["roles"])
        cluster.databases(module.params["databases"])
        cluster.privileges(module.params["privileges"])
    except cluster.psycopg2.Error as error:
        module.fail_json(msg=f"PostgreSQL refused: {str(error).strip()}", changes=cluster.changes)
    finally:
        for connection in cluster.connections.values():
            connection.close()
    module.exit_json(changed=bool(cluster.changes), changes=cluster.changes, restart_pending=restart,
                     diff={"prepared": "".join(f"{c}\n" for c in cluster.changes)})


if __name__ == "__main__":
    main()
