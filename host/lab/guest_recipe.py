"""What the VM lab's guest image holds: the Debian packages, the files put into it, the hooks
that install the agent the way the README tells a sysadmin to.

The README's steps, as done here (host/lab/image.py runs them inside mmdebstrap):
``python3 -m venv /opt/quiesce-agent``; ``pip install`` of the project's wheel, offline
(``--no-index --find-links``, the wheels built on the host for the guest's Python); the config
in /etc/quiesce-agent/agent.yaml; systemd/quiesce-agent.service in /etc/systemd/system,
enabled; the bridge in /etc/qemu/fsfreeze-hook.d/ and, as qemu-ga's hook, in
/etc/qemu/qemu-ga.conf (the master hook that runs the whole folder is installed beside it,
unused until a test points qemu-ga.conf at it). Where the guest needs more than the README
says, the constant below says why (qemu-ga's hook, PostgreSQL's peer authentication).

Also: a serial console with root logged in (a throw-away lab image), udev (the
/dev/virtio-ports/ links), systemd-networkd with DHCP on any NIC the lab adds, and no
service listening on a network but the lab's two databases. PostgreSQL and MariaDB are
installed and their clusters initialised by the packages at build time (initdb and
mariadb-install-db take 20-30 s each under TCG: not at every first boot); then their data
directories are moved out of the root into the data disk's image (host/lab/image.py), mounted
at DATA_MOUNT in the guest, and the configuration points there. Their units are disabled: the
VM lab starts them once the data disk is mounted, so a guest booted without it (the smoke
test) runs no database. From the host they are reached through QEMU's user networking, which
forwards 127.0.0.1 ports to the guest's 5432 and 3306; every connection forwarded that way
comes from 10.0.2.2, the only address the two servers let in without a password (a
throw-away lab image).

The agent freezes only the data disk (``filesystems.mounts: [DATA_MOUNT]``), never the
guest's root: its config says so explicitly, as the README tells a sysadmin to.
"""

from __future__ import annotations

from pathlib import Path

from host.lab.databases import LabError

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# fmt: off
PACKAGES = (
    "linux-image-amd64", "systemd", "systemd-sysv", "udev", "dbus", "procps", "iproute2",
    "python3", "python3-venv", "postgresql", "mariadb-server", "qemu-guest-agent", "e2fsprogs",
)
# fmt: on
GUEST_PYTHON = ("3.11", "cp311")  # Debian 12's python3
GUEST_GLIBC_MINOR = 36  # Debian 12's libc6: wheels up to manylinux_2_36 run there
CMDLINE = "root=/dev/vda rw console=ttyS0 panic=-1"
AGENT_PORT = "org.quiesce.0"
DATA_MOUNT = "/srv/data"  # the data disk in the guest: the databases' data, all the agent freezes
DATA_LABEL = "quiesce-data"  # its ext4 label; fstab mounts it by label
HOST_ADDR = "10.0.2.2"  # where QEMU user networking's forwarded connections come from
LAB_MYSQL_USER = "lab"  # MariaDB's account for the host (the load), from HOST_ADDR only
PG_PORT, MYSQL_PORT = 5432, 3306

AGENT_YAML = f"""\
# quiesce-agent in the VM lab's guest image (host/lab/image.py)
listen:
  unix: /run/quiesce-agent/agent.sock     # the qemu-ga bridge and the CLI in the guest
  virtio_serial: /dev/virtio-ports/{AGENT_PORT}  # the host, through a QEMU chardev
freeze:
  ceiling_seconds: 60
  timeout_seconds: 30
scripts:
  dir: /etc/quiesce-agent/backupScripts.d
  timeout_seconds: 30
filesystems:
  mounts: [{DATA_MOUNT}]  # the data disk only: never auto, never the guest's root
  exclude: []
postgres:
  - name: main
    dsn: "host=/var/run/postgresql user=postgres dbname=postgres"
mysql:
  - name: main
    unix_socket: /run/mysqld/mysqld.sock
    user: root
    lock: auto
"""
# qemu-ga runs no hook unless told (-F or this key); pointing it at the bridge itself, not at
# Debian's /etc/qemu/fsfreeze-hook (which exits 0 whatever its scripts did), lets a failed
# freeze of the databases fail the guest-fsfreeze-freeze
QGA_CONF = "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook.d/50-quiesce-agent-bridge\n"
AUTOLOGIN = (
    "[Service]\nExecStart=\n"
    "ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM\n"
)
NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"
FSTAB = (  # nofail: a guest booted without the data disk (the smoke test) still comes up
    "/dev/vda / ext4 rw,errors=remount-ro 0 0\n"
    f"LABEL={DATA_LABEL} {DATA_MOUNT} ext4 rw,nofail,x-systemd.device-timeout=10s 0 2\n"
)
# the initramfs only needs to find /dev/vda and mount ext4 on it: MODULES=list with these
# (and their dependencies) makes it 5 times smaller than Debian's MODULES=most, which under
# TCG takes seconds to unpack at every boot; udev loads the rest from the root filesystem
INITRD_MODULES = "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n"
HOSTS = "127.0.0.1 localhost\n127.0.1.1 quiesce-guest\n"
CHECK_AGENT = (
    "import agent.__main__, agent.protocol, hooks.postgres, hooks.mysql, hooks.filesystems; "
    "from agent import config; config.load('/etc/quiesce-agent/agent.yaml')"
)
PG_IDENT = (  # Debian's pg_hba gives 'postgres' to the OS user postgres only (peer); the
    # agent runs as root and uses the README's dsn, so map root to postgres
    'for f in "$1"/etc/postgresql/*/main/pg_hba.conf; do '
    "sed -i 's/^local\\( *\\)all\\( *\\)postgres\\( *\\)peer$/& map=quiesce/' \"$f\" "
    '&& grep -q "map=quiesce" "$f" '
    "&& printf 'quiesce root postgres\\nquiesce postgres postgres\\n' >> \"${f%/*}/pg_ident.conf\" "
    "|| exit 1; done"
)
MARIADB_CNF = f"""\
# the VM lab (host/lab/guest_recipe.py): data and binary log on the data disk, reachable
# from the host through QEMU's forwarded port; durable commits
[mysqld]
datadir = {DATA_MOUNT}/mysql
bind-address = 0.0.0.0
skip-name-resolve
log_bin = {DATA_MOUNT}/mysql/binlog
server_id = 1
binlog_format = ROW
sync_binlog = 1
innodb_flush_log_at_trx_commit = 1
innodb_buffer_pool_size = 64M
init_file = /etc/mysql/quiesce-lab-init.sql
"""
MARIADB_INIT = (  # run at every start: the host's account (no password, HOST_ADDR only)
    f"CREATE USER IF NOT EXISTS '{LAB_MYSQL_USER}'@'{HOST_ADDR}';\n"
    f"GRANT ALL PRIVILEGES ON *.* TO '{LAB_MYSQL_USER}'@'{HOST_ADDR}';\n"
)
PG_CONF = (
    "# the VM lab (host/lab/guest_recipe.py): reachable through QEMU's forwarded port\n"
    "listen_addresses = '*'\nshared_buffers = 32MB\nmax_connections = 40\n"
)
PG_DATA = (  # each cluster's data directory moves to the data disk (host/lab/image.py moves
    # the files); the host's connections come from HOST_ADDR, trusted as 'postgres'
    'for d in "$1"/etc/postgresql/*/main; do '
    f"sed -i \"s|^data_directory = '/var/lib/postgresql/|data_directory = '{DATA_MOUNT}"
    '/postgresql/|" "$d/postgresql.conf" '
    f'&& grep -q "^data_directory = .{DATA_MOUNT}/" "$d/postgresql.conf" '
    f'&& printf "host all postgres {HOST_ADDR}/32 trust\\n" >> "$d/pg_hba.conf" '
    '&& cp "$1/etc/quiesce-lab-postgresql.conf" "$d/conf.d/quiesce-lab.conf" '
    '|| exit 1; done; rm "$1/etc/quiesce-lab-postgresql.conf"'
)
NEEDS_DATA = f"[Unit]\nRequiresMountsFor={DATA_MOUNT}\n".encode()  # never on the empty mount point
QUIET_UNITS = (  # packaged units that would start at boot; the lab starts the databases itself
    "postgresql.service mariadb.service e2scrub_reap.service apt-daily.timer "
    "apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer"
)


def guest_files() -> dict[str, tuple[int, bytes]]:
    """What the image gets besides packages: path in the guest -> (mode, content)."""
    bridge = (REPO / "backupScripts.d" / "50-quiesce-agent-bridge").read_bytes()
    master = (REPO / "packaging" / "qemu-ga" / "quiesce-agent-fsfreeze-hook").read_bytes()
    unit = (REPO / "systemd" / "quiesce-agent.service").read_bytes()
    return {
        "etc/quiesce-agent/agent.yaml": (0o644, AGENT_YAML.encode()),
        "etc/quiesce-agent/backupScripts.d/": (0o755, b""),
        "etc/systemd/system/quiesce-agent.service": (0o644, unit),
        "etc/qemu/fsfreeze-hook.d/50-quiesce-agent-bridge": (0o755, bridge),
        "etc/qemu/qemu-ga.conf": (0o644, QGA_CONF.encode()),
        # the other install the README gives: the stock hook folder through a master hook
        # that fails when a script fails (QGA_CONF picks which one qemu-ga runs)
        "etc/qemu/quiesce-agent-fsfreeze-hook": (0o755, master),
        "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": (
            0o644,
            AUTOLOGIN.encode(),
        ),
        "etc/systemd/network/80-lab.network": (0o644, NETWORK.encode()),
        "etc/fstab": (0o644, FSTAB.encode()),
        "etc/hostname": (0o644, b"quiesce-guest\n"),
        "etc/hosts": (0o644, HOSTS.encode()),
        "etc/resolv.conf": (0o644, b"# no DNS in the lab\n"),
        "etc/initramfs-tools/conf.d/quiesce-lab": (0o644, b"MODULES=list\n"),
        "etc/mysql/mariadb.conf.d/70-quiesce-lab.cnf": (0o644, MARIADB_CNF.encode()),
        "etc/mysql/quiesce-lab-init.sql": (0o644, MARIADB_INIT.encode()),
        "etc/quiesce-lab-postgresql.conf": (0o644, PG_CONF.encode()),
        DATA_MOUNT.lstrip("/") + "/": (0o755, b""),
        "etc/systemd/system/postgresql@.service.d/quiesce-lab.conf": (0o644, NEEDS_DATA),
        "etc/systemd/system/mariadb.service.d/quiesce-lab.conf": (0o644, NEEDS_DATA),
        "usr/share/initramfs-tools/modules.d/quiesce-lab": (0o644, INITRD_MODULES.encode()),
    }


def mmdebstrap_args(work: Path, debs: Path) -> list[str]:
    """The whole mmdebstrap command: packages, options and the hooks that install the agent."""
    if any(c.isspace() for c in str(work) + str(debs)):
        raise LabError(f"guest image: {work}: mmdebstrap hooks need a path without spaces")
    chroot = 'chroot "$1" '
    pip = "/opt/quiesce-agent/bin/pip install --no-index --find-links /tmp/wheels"
    hooks = [
        f"sync-in {work}/files /",
        f"copy-in {work}/wheels /tmp",
        chroot + "python3 -m venv /opt/quiesce-agent",
        chroot + pip + " --disable-pip-version-check 'quiesce-agent[guest]'",  # as the README
        chroot + f'/opt/quiesce-agent/bin/python -c "{CHECK_AGENT}"',
        chroot + "systemctl enable quiesce-agent.service systemd-networkd.service",
        chroot + f"systemctl disable {QUIET_UNITS}",
        chroot + "systemctl mask systemd-networkd-wait-online.service",
        chroot + "passwd --delete root",
        PG_IDENT,
        PG_DATA,
        # (a shell hook, not sync-out: mmdebstrap ignores a sync-out that runs out of space)
        f'mkdir {work}/debs-new && cp -p "$1"/var/cache/apt/archives/*.deb {work}/debs-new/',
    ]
    early = [  # before the kernel package makes its initramfs
        'mkdir -p "$1/etc/initramfs-tools" "$1/usr/share/initramfs-tools"',
        f"sync-in {work}/files/etc/initramfs-tools /etc/initramfs-tools",
        f"sync-in {work}/files/usr/share/initramfs-tools /usr/share/initramfs-tools",
    ]
    excluded = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "doc", "info")]
    return [
        "mmdebstrap",
        "--mode=unshare",
        "--variant=apt",
        "--format=directory",
        "--verbose",
        '--aptopt=APT::Install-Recommends "false"',
        *excluded,
        "--include=" + ",".join(PACKAGES),
        "--skip=essential/unlink",  # keep the essential .debs for debs/
        "--skip=cleanup/reproducible",  # it would empty our /etc/machine-id
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives",
        *(f"--essential-hook={h}" for h in early),
        *(f"--customize-hook={h}" for h in hooks),
        SUITE,
        str(work / "tree"),
        *MIRRORS,
    ]


def pip_target_args() -> list[str]:
    """``pip download`` options that pick wheels for the guest's CPython and glibc, whatever
    Python the host runs (pip does not widen manylinux_2_X tags by itself)."""
    platforms = [f"--platform=manylinux_2_{m}_x86_64" for m in range(GUEST_GLIBC_MINOR, 4, -1)]
    legacy = ["--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
    abis = [f"--abi={GUEST_PYTHON[1]}", "--abi=abi3", "--abi=none"]
    target = [f"--python-version={GUEST_PYTHON[0]}", "--implementation=cp"]
    return ["--only-binary=:all:", *target, *abis, *platforms, *legacy]
