# Copyright 2026 Gentoo Authors
# Distributed under the terms of the GNU General Public License v2

# CRATES and the crates' LICENSE below are generated from Cargo.lock by
# pycargoebuild (see packaging/gentoo/README.md); tests/ebuild.rs keeps
# them in step with Cargo.lock.

EAPI=8

CRATES="
	aho-corasick@1.1.5
	anstream@1.0.0
	anstyle-parse@1.0.0
	anstyle-query@1.1.5
	anstyle-wincon@3.0.11
	anstyle@1.0.14
	autocfg@1.5.1
	bit-set@0.8.0
	bit-vec@0.8.0
	bitflags@2.13.2
	bstr@1.13.1
	bumpalo@3.20.3
	cc@1.11.1
	cfg-if@1.0.5
	cfg_aliases@0.2.2
	clap@4.6.7
	clap_builder@4.6.7
	clap_complete@4.6.11
	clap_derive@4.6.7
	clap_lex@1.1.1
	clap_mangen@0.2.33
	colorchoice@1.0.5
	console@0.16.6
	encode_unicode@1.0.0
	equivalent@1.0.3
	errno@0.3.14
	fallible-iterator@0.3.0
	fallible-streaming-iterator@0.1.9
	fastrand@2.5.0
	find-msvc-tools@0.1.15
	fnv@1.0.7
	foldhash@0.1.5
	futures-core@0.3.34
	futures-task@0.3.34
	futures-util@0.3.34
	getrandom@0.3.4
	getrandom@0.4.3
	globset@0.4.19
	hashbrown@0.15.5
	hashbrown@0.17.1
	hashlink@0.10.0
	heck@0.5.0
	humantime@2.4.0
	indexmap@2.14.2
	indicatif@0.18.6
	inotify-sys@0.1.8
	inotify@0.11.5
	is_terminal_polyfill@1.70.2
	itoa@1.0.18
	js-sys@0.3.107
	lazy_static@1.5.1
	libc@0.2.191
	libsqlite3-sys@0.35.0
	linux-raw-sys@0.12.1
	log@0.4.35
	matchers@0.2.0
	memchr@2.8.3
	nfs@0.1.0
	nix@0.30.1
	nu-ansi-term@0.50.3
	num-traits@0.2.19
	once_cell@1.21.4
	once_cell_polyfill@1.70.2
	pin-project-lite@0.2.17
	pkg-config@0.3.34
	portable-atomic@1.15.0
	ppv-lite86@0.2.21
	proc-macro2@1.0.107
	proptest@1.11.0
	quick-error@1.2.3
	quote@1.0.47
	r-efi@5.3.0
	r-efi@6.0.0
	rand@0.9.5
	rand_chacha@0.9.0
	rand_core@0.9.5
	rand_xorshift@0.4.0
	regex-automata@0.4.18
	regex-syntax@0.8.11
	roff@1.1.1
	rusqlite@0.37.0
	rustc-hash@2.1.3
	rustix@1.1.6
	rustversion@1.0.23
	rusty-fork@0.3.1
	serde@1.0.229
	serde_core@1.0.229
	serde_derive@1.0.229
	serde_json@1.0.154
	serde_spanned@1.1.3
	sharded-slab@0.1.7
	shlex@2.0.1
	signal-hook-registry@1.4.8
	signal-hook@0.3.18
	slab@0.4.12
	smallvec@1.16.5
	strsim@0.11.1
	syn@2.0.119
	syn@3.0.9
	tempfile@3.27.0
	thiserror-impl@2.0.21
	thiserror@2.0.21
	thread_local@1.1.10
	toml@0.9.12+spec-1.1.0
	toml_datetime@0.7.5+spec-1.1.0
	toml_parser@1.1.5+spec-1.1.0
	toml_writer@1.2.0+spec-1.1.0
	tracing-attributes@0.1.31
	tracing-core@0.1.36
	tracing-log@0.2.0
	tracing-serde@0.2.0
	tracing-subscriber@0.3.23
	tracing@0.1.44
	unarray@0.1.4
	unicode-ident@1.0.27
	unicode-width@0.2.3
	unit-prefix@0.5.2
	utf8parse@0.2.2
	valuable@0.1.1
	vcpkg@0.2.15
	wait-timeout@0.2.1
	wasip2@1.0.1+wasi-0.2.4
	wasm-bindgen-macro-support@0.2.130
	wasm-bindgen-macro@0.2.130
	wasm-bindgen-shared@0.2.130
	wasm-bindgen@0.2.130
	web-time@1.1.0
	windows-link@0.2.1
	windows-sys@0.61.2
	winnow@0.7.15
	winnow@1.0.5
	wit-bindgen@0.46.0
	zerocopy-derive@0.8.63
	zerocopy@0.8.63
	zmij@1.0.23
"

RUST_MIN_VER="1.85.0"

inherit cargo shell-completion systemd

DESCRIPTION="Keeps per-host Gentoo distfiles directories hardlinked, event-driven"
HOMEPAGE="https://github.com/distlink/distlink"
SRC_URI="
	https://github.com/distlink/distlink/archive/v${PV}.tar.gz -> ${P}.tar.gz
	${CARGO_CRATE_URIS}
"

LICENSE="GPL-2"
# Dependent crate licenses
LICENSE+=" Apache-2.0 ISC MIT Unicode-3.0 ZLIB"
SLOT="0"
KEYWORDS="~amd64 ~arm64"
# The suite drives the daemon with real inotify, signals and (as root)
# mounts and NFS servers; run `cargo test` (or .ci/run) outside the sandbox.
RESTRICT="test"

QA_FLAGS_IGNORED="usr/bin/distlink"

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
