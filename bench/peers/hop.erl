%% The Erlang side of bench/run_peers.sh: a closure carrying N bytes of state is spawned on
%% another node over distribution (spawn(Node, Fun)), runs there, and replies; the time from
%% the spawn to the reply is one sample, like a sojourn agent hop with its state.
%% Usage (from run_peers.sh): erl -sname a -setcookie C -pa DIR -noshell -run hop main NODE BYTES N
%% Prints one line: "median_us p99_us samples".
-module(hop).
-export([main/1]).

main([NodeName, BytesText, CountText]) ->
    Node = list_to_atom(NodeName),
    Bytes = list_to_integer(BytesText),
    Count = list_to_integer(CountText),
    case net_kernel:connect_node(Node) of
        true -> ok;
        _ -> io:format(standard_error, "hop: cannot reach ~s~n", [NodeName]), halt(1)
    end,
    %% Random bytes: nothing along the way can shrink them.
    State = crypto_free_bytes(Bytes),
    _ = [once(Node, State) || _ <- lists:seq(1, max(10, Count div 10))],  % warm-up
    Samples = lists:sort([once(Node, State) || _ <- lists:seq(1, Count)]),
    Median = lists:nth((Count + 1) div 2, Samples),
    P99 = lists:nth(max(1, min(Count, (Count * 99 + 99) div 100)), Samples),
    io:format("~.1f ~.1f ~b~n", [Median / 1000, P99 / 1000, Count]),
    halt(0).

%% One remote spawn of a closure over State and its reply, in nanoseconds.
once(Node, State) ->
    Self = self(),
    Ref = make_ref(),
    T0 = erlang:monotonic_time(nanosecond),
    spawn(Node, fun() -> Self ! {Ref, byte_size(State)} end),
    receive {Ref, _Size} -> ok end,
    erlang:monotonic_time(nanosecond) - T0.

%% erlang-base has no crypto application without OpenSSL's: rand is enough here.
crypto_free_bytes(N) ->
    list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).
