# distlink: build and install.
#
#   make                        build the release binary (cargo build --release)
#   make install                install it with its man pages, shell completions,
#                               systemd unit, OpenRC script and conf.d, and docs
#   make install DESTDIR=/tmp/pkg PREFIX=/usr
#                               the same into a staging tree (packagers)
#   make uninstall              remove what install put in place
#
# `make install` never writes /etc/distlink.toml: the example configuration
# goes to $(DOCDIR)/distlink.toml; copy it to /etc/distlink.toml and set
# `hosts`. An existing $(CONFDDIR)/distlink (the admin's) is left as it is.
#
# DISTLINK=path/to/distlink installs that binary instead of building one.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DOCDIR ?= $(DATADIR)/doc/distlink
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
INITDIR ?= $(SYSCONFDIR)/init.d
CONFDDIR ?= $(SYSCONFDIR)/conf.d
DESTDIR ?=

CARGO ?= cargo
INSTALL ?= install
# Where the generated man pages and completions are put before installing.
GEN ?= target/dist

ifeq ($(origin DISTLINK),undefined)
DISTLINK := target/release/distlink
BUILD := build
else
BUILD :=
endif

.PHONY: all build generate install uninstall clean

all: $(BUILD)

build:
	$(CARGO) build --release --locked

# Man pages and completions come from the binary itself; the service files
# name the binary where BINDIR puts it.
generate: $(BUILD)
	rm -rf '$(GEN)'
	mkdir -p '$(GEN)/man'
	'$(DISTLINK)' man --dir '$(GEN)/man'
	'$(DISTLINK)' completions bash > '$(GEN)/distlink.bash'
	'$(DISTLINK)' completions zsh > '$(GEN)/_distlink'
	'$(DISTLINK)' completions fish > '$(GEN)/distlink.fish'
	sed 's|/usr/bin/distlink|$(BINDIR)/distlink|g' systemd/distlink.service > '$(GEN)/distlink.service'
	sed 's|/usr/bin/distlink|$(BINDIR)/distlink|g' openrc/distlink > '$(GEN)/distlink.initd'

install: generate
	$(INSTALL) -D -m 0755 '$(DISTLINK)' '$(DESTDIR)$(BINDIR)/distlink'
	$(INSTALL) -d '$(DESTDIR)$(MANDIR)/man1'
	$(INSTALL) -m 0644 '$(GEN)'/man/*.1 '$(DESTDIR)$(MANDIR)/man1/'
	$(INSTALL) -D -m 0644 '$(GEN)/distlink.bash' '$(DESTDIR)$(BASHCOMPDIR)/distlink'
	$(INSTALL) -D -m 0644 '$(GEN)/_distlink' '$(DESTDIR)$(ZSHCOMPDIR)/_distlink'
	$(INSTALL) -D -m 0644 '$(GEN)/distlink.fish' '$(DESTDIR)$(FISHCOMPDIR)/distlink.fish'
	$(INSTALL) -D -m 0644 '$(GEN)/distlink.service' '$(DESTDIR)$(SYSTEMDUNITDIR)/distlink.service'
	$(INSTALL) -D -m 0755 '$(GEN)/distlink.initd' '$(DESTDIR)$(INITDIR)/distlink'
	test -e '$(DESTDIR)$(CONFDDIR)/distlink' || \
		$(INSTALL) -D -m 0644 openrc/distlink.confd '$(DESTDIR)$(CONFDDIR)/distlink'
	$(INSTALL) -D -m 0644 config/distlink.toml '$(DESTDIR)$(DOCDIR)/distlink.toml'
	$(INSTALL) -m 0644 README.md docs/admin.md '$(DESTDIR)$(DOCDIR)/'

# The conf.d file is left: it may hold the admin's settings.
uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/distlink' '$(DESTDIR)$(MANDIR)'/man1/distlink.1 \
		'$(DESTDIR)$(MANDIR)'/man1/distlink-*.1 '$(DESTDIR)$(BASHCOMPDIR)/distlink' \
		'$(DESTDIR)$(ZSHCOMPDIR)/_distlink' '$(DESTDIR)$(FISHCOMPDIR)/distlink.fish' \
		'$(DESTDIR)$(SYSTEMDUNITDIR)/distlink.service' '$(DESTDIR)$(INITDIR)/distlink'
	rm -rf '$(DESTDIR)$(DOCDIR)'

clean:
	rm -rf '$(GEN)'
