# Copyright 2026 Gentoo Authors
# Distributed under the terms of the GNU General Public License v2

# The live ebuild: builds the newest commit; cargo fetches the crates
# Cargo.lock names. The crates' LICENSE line is the versioned ebuild's
# (tests/ebuild.rs keeps the two in step).

EAPI=8

RUST_MIN_VER="1.85.0"

inherit cargo git-r3 shell-completion systemd

DESCRIPTION="Keeps per-host Gentoo distfiles directories hardlinked, event-driven"
HOMEPAGE="https://github.com/distlink/distlink"
EGIT_REPO_URI="https://github.com/distlink/distlink.git"

LICENSE="GPL-2"
# Dependent crate licenses
LICENSE+=" Apache-2.0 ISC MIT Unicode-3.0 ZLIB"
SLOT="0"
# The suite drives the daemon with real inotify, signals and (as root)
# mounts and NFS servers; run `cargo test` (or .ci/run) outside the sandbox.
RESTRICT="test"

QA_FLAGS_IGNORED="usr/bin/distlink"

src_unpack() {
	git-r3_src_unpack
	cargo_live_src_unpack
}

src_install() {
	cargo_src_install

	local bin="$(cargo_target_dir)/distlink"
	mkdir -p "${T}/man" || die
	"${bin}" man --dir "${T}/man" || die
	doman "${T}"/man/*.1
	"${bin}" completions bash > "${T}/distlink.bash" || die
	"${bin}" completions zsh > "${T}/_distlink" || die
	"${bin}" completions fish > "${T}/distlink.fish" || die
	newbashcomp "${T}/distlink.bash" distlink
	dozshcomp "${T}/_distlink"
	dofishcomp "${T}/distlink.fish"

	systemd_dounit systemd/distlink.service
	newinitd openrc/distlink distlink
	newconfd openrc/distlink.confd distlink

	# The example configuration only: the admin writes the real one.
	dodoc config/distlink.toml README.md docs/admin.md
}

pkg_postinst() {
	if [[ -z ${REPLACING_VERSIONS} ]]; then
		elog "Copy ${EROOT}/usr/share/doc/${PF}/distlink.toml* to ${EROOT}/etc/distlink.toml"
		elog "and set root and hosts. On host dirs that already hold files, run"
		elog "'distlink migrate' once (or 'distlink sync --adopt') before starting the"
		elog "service: distlink run refuses to guess what was distributed."
		elog "Then: systemctl enable --now distlink, or rc-update add distlink default."
		elog "See distlink(1) and ${EROOT}/usr/share/doc/${PF}/admin.md*."
	fi
}
