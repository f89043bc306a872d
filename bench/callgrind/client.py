import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
ok = 0
for i in range(n):
    c.request("GET", "/", headers={"Host": "web.shop:8080"})
    r = c.getresponse(); r.read(); ok += r.status == 200
print(ok)
