# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tokend_global_optspecs
    string join \n h/help V/version
end

function __fish_tokend_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tokend_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tokend_using_subcommand
    set -l cmd (__fish_tokend_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tokend -n "__fish_tokend_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_needs_command" -s V -l version -d 'Print version'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "run" -d 'Run the daemon in the foreground'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "dev" -d 'Development mode: a built-in local IdP, a demo source, socket ./tokend.sock'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "check" -d 'Validate the config; with --fetch, also get one token per source'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "token" -d 'Print a token from the running daemon (for `Authorization: Bearer $(tokend token NAME)`)'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "mi-env" -d 'Print IDENTITY_ENDPOINT and IDENTITY_HEADER for a managed-identity app'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "credential" -d 'Print a source\'s token in the format a tool\'s credential helper expects'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "socket-dir" -d 'Hand the socket\'s directory to the daemon\'s user (a Kubernetes init container)'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "status" -d 'Show the state of every source'
complete -c tokend -n "__fish_tokend_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tokend -n "__fish_tokend_using_subcommand run" -s c -l config -d 'Config file' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand dev" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand check" -s c -l config -d 'Config file' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand check" -l fetch -d 'Request a token per source and show its claims'
complete -c tokend -n "__fish_tokend_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand token" -l min-ttl -d 'The token must stay valid at least this long (e.g. 5m)' -r
complete -c tokend -n "__fish_tokend_using_subcommand token" -l socket -d 'The daemon\'s socket' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand token" -l timeout -d 'Give up on a daemon that has not answered within this long' -r
complete -c tokend -n "__fish_tokend_using_subcommand token" -l json -d 'Print the JSON body instead of the bare token'
complete -c tokend -n "__fish_tokend_using_subcommand token" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand mi-env" -s c -l config -d 'Config file' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand mi-env" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and not __fish_seen_subcommand_from kubectl git gcp help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and not __fish_seen_subcommand_from kubectl git gcp help" -f -a "kubectl" -d 'An ExecCredential for kubectl and other client-go programs'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and not __fish_seen_subcommand_from kubectl git gcp help" -f -a "git" -d 'git\'s credential-helper protocol (get; store and erase do nothing)'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and not __fish_seen_subcommand_from kubectl git gcp help" -f -a "gcp" -d 'Google\'s executable-sourced credential (workload identity federation)'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and not __fish_seen_subcommand_from kubectl git gcp help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from kubectl" -l socket -d 'The daemon\'s socket' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from kubectl" -l timeout -d 'Give up on a daemon that has not answered within this long' -r
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from kubectl" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from git" -l username -d 'The user name sent with the token as password (git before 2.46)' -r
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from git" -l host -d 'Answer only for this host (as git sends it: `dev.azure.com`, or `host:port`); repeat for several. Without it, every host git asks about gets the token: scope the helper to a URL in git\'s config (credential.https://HOST.helper), or give --host' -r
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from git" -l socket -d 'The daemon\'s socket' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from git" -l timeout -d 'Give up on a daemon that has not answered within this long' -r
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from git" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from gcp" -l socket -d 'The daemon\'s socket' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from gcp" -l timeout -d 'Give up on a daemon that has not answered within this long' -r
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from gcp" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from help" -f -a "kubectl" -d 'An ExecCredential for kubectl and other client-go programs'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from help" -f -a "git" -d 'git\'s credential-helper protocol (get; store and erase do nothing)'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from help" -f -a "gcp" -d 'Google\'s executable-sourced credential (workload identity federation)'
complete -c tokend -n "__fish_tokend_using_subcommand credential; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tokend -n "__fish_tokend_using_subcommand socket-dir" -l owner -d 'The daemon\'s uid' -r
complete -c tokend -n "__fish_tokend_using_subcommand socket-dir" -l group -d 'The directory\'s gid' -r
complete -c tokend -n "__fish_tokend_using_subcommand socket-dir" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand status" -l socket -d 'The daemon\'s socket' -r -F
complete -c tokend -n "__fish_tokend_using_subcommand status" -l timeout -d 'Give up on a daemon that has not answered within this long' -r
complete -c tokend -n "__fish_tokend_using_subcommand status" -l json -d 'Print the /v1/sources document'
complete -c tokend -n "__fish_tokend_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "run" -d 'Run the daemon in the foreground'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "dev" -d 'Development mode: a built-in local IdP, a demo source, socket ./tokend.sock'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "check" -d 'Validate the config; with --fetch, also get one token per source'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "token" -d 'Print a token from the running daemon (for `Authorization: Bearer $(tokend token NAME)`)'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "mi-env" -d 'Print IDENTITY_ENDPOINT and IDENTITY_HEADER for a managed-identity app'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "credential" -d 'Print a source\'s token in the format a tool\'s credential helper expects'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "socket-dir" -d 'Hand the socket\'s directory to the daemon\'s user (a Kubernetes init container)'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "status" -d 'Show the state of every source'
complete -c tokend -n "__fish_tokend_using_subcommand help; and not __fish_seen_subcommand_from run dev check token mi-env credential socket-dir status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tokend -n "__fish_tokend_using_subcommand help; and __fish_seen_subcommand_from credential" -f -a "kubectl" -d 'An ExecCredential for kubectl and other client-go programs'
complete -c tokend -n "__fish_tokend_using_subcommand help; and __fish_seen_subcommand_from credential" -f -a "git" -d 'git\'s credential-helper protocol (get; store and erase do nothing)'
complete -c tokend -n "__fish_tokend_using_subcommand help; and __fish_seen_subcommand_from credential" -f -a "gcp" -d 'Google\'s executable-sourced credential (workload identity federation)'
